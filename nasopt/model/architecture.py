"""Architecture: the description of one ResCBAM-3D network, as plain data.

It lives beside the network it describes (not in the search space) so that loading a
checkpoint or an ensemble needs neither Optuna nor a study file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """A ResCBAM-3D network: widths of the residual blocks in each stage, CBAM flags, margin."""

    stages: tuple[tuple[int, ...], ...]
    cbam_stem: bool
    cbam_stages: tuple[bool, ...]
    margin: int
    stem_width: int = 4

    def __post_init__(self) -> None:
        if len(self.cbam_stages) != len(self.stages) or not all(self.stages):
            raise ValueError("Architecture: every stage needs at least one block and a CBAM flag")

    @property
    def depth(self) -> int:
        return sum(len(s) for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stages": [list(s) for s in self.stages],
            "cbam_stem": self.cbam_stem,
            "cbam_stages": list(self.cbam_stages),
            "margin": self.margin,
            "stem_width": self.stem_width,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Architecture:
        return cls(
            stages=tuple(tuple(int(w) for w in s) for s in d["stages"]),
            cbam_stem=bool(d["cbam_stem"]),
            cbam_stages=tuple(bool(c) for c in d["cbam_stages"]),
            margin=int(d["margin"]),
            stem_width=int(d.get("stem_width", cls.stem_width)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def summary(self) -> str:
        """Compact one-line form, e.g. ``4c | 16,32 c | 32,64 | 64,64,128 c | m4``."""
        parts = [f"{self.stem_width}{'c' if self.cbam_stem else ''}"]
        for widths, cbam in zip(self.stages, self.cbam_stages):
            parts.append(",".join(map(str, widths)) + (" c" if cbam else ""))
        return " | ".join(parts + [f"m{self.margin}"])


#: The paper's default (largest published) network.
PAPER_DEFAULT = Architecture(
    stages=((64, 64, 64), (128, 128, 256), (256, 256, 256, 512)),
    cbam_stem=True,
    cbam_stages=(True, True, True),
    margin=4,
)
