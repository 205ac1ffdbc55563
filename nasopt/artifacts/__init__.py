"""What a trial leaves behind: its record's keys and its checkpoint."""
