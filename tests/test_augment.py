import torch

from nasopt.inference.core import center_crop
from nasopt.training.augment import crop_and_flip, zero_out


def _volumes(b=6, s=40):
    torch.manual_seed(0)
    return torch.randint(-1000, 400, (b, s, s, s), dtype=torch.int16)


def _matches_some_window(src: torch.Tensor, out: torch.Tensor, size: int, shift: int) -> bool:
    """out equals a size^3 window of src within +-shift of the centre, possibly flipped per axis."""
    s = src.shape[-1]
    c = (s - size) // 2
    for dz in range(-shift, shift + 1):
        for dy in range(-shift, shift + 1):
            for dx in range(-shift, shift + 1):
                win = src[c + dz : c + dz + size, c + dy : c + dy + size, c + dx : c + dx + size]
                for fz in (False, True):
                    for fy in (False, True):
                        for fx in (False, True):
                            dims = [d for d, f in zip((0, 1, 2), (fz, fy, fx)) if f]
                            cand = win.flip(dims) if dims else win
                            if torch.equal(cand, out):
                                return True
    return False


def test_crop_and_flip_takes_real_windows_of_each_sample():
    x = _volumes()
    out = crop_and_flip(x, 32, 2, True, torch.Generator().manual_seed(3))
    assert out.shape == (6, 32, 32, 32) and out.dtype == x.dtype
    for i in range(len(x)):
        assert _matches_some_window(x[i], out[i], 32, 2)


def test_no_shift_no_flip_is_centre_crop():
    x = _volumes()
    assert torch.equal(crop_and_flip(x, 32, 0, False), center_crop(x, 32))


def test_augmentation_is_deterministic_under_a_seed_and_varies_without():
    x = _volumes()
    a = crop_and_flip(x, 32, 4, True, torch.Generator().manual_seed(7))
    b = crop_and_flip(x, 32, 4, True, torch.Generator().manual_seed(7))
    c = crop_and_flip(x, 32, 4, True, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_order_is_kept_so_labels_stay_with_their_sample():
    # Each sample is a constant volume equal to its index: after augmentation it must still be.
    x = torch.arange(5, dtype=torch.int16)[:, None, None, None].expand(5, 40, 40, 40).contiguous()
    out = zero_out(crop_and_flip(x, 32, 4, True).float(), 0, 0.0)
    for i in range(5):
        assert torch.all(out[i] == i)


def test_zero_out_blanks_exactly_one_cube_when_it_fires():
    x = torch.ones(8, 32, 32, 32)
    out = zero_out(x, 4, 1.0, torch.Generator().manual_seed(0))
    zeros = (out == 0).flatten(1).sum(1)
    assert torch.all(zeros == 64)
    for i in range(8):
        idx = torch.nonzero(out[i] == 0)
        assert torch.all(idx.max(0).values - idx.min(0).values == 3)
    assert torch.equal(zero_out(x, 4, 0.0), x)
    assert torch.equal(x, torch.ones(8, 32, 32, 32))  # input untouched
