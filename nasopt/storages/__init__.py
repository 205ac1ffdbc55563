"""Study storages: opening one by URL, and the resilient RDB storage."""
