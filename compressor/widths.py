"""Which expert widths every kernel can run (torch-free, so the UI's estimate can use it too).

torch's grouped_mm (transformers' default expert kernel) needs 16-byte-aligned rows; a bf16 `down_proj` row is
2 * width bytes, so widths of 8 or more are kept to multiples of 8:

    align_width(154) == 152;  align_width(192) == 192;  align_width(5) == 5
"""
WIDTH_ALIGN = 8


def align_width(width: int) -> int:
    """Largest w <= width with w % 8 == 0 when width >= 8; widths below 8 are left alone."""
    return width if width < WIDTH_ALIGN else width - width % WIDTH_ALIGN
