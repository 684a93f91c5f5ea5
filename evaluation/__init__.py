"""Dataset evaluation: vitalcam's heart rate on recordings with a contact reference, beside baselines.

`load(path, layout)` finds the recordings (UBFC-rPPG, PURE or a folder of video + CSV pairs),
`evaluate(recordings, windows, baseline=..., jobs=...)` runs capture → preprocess → the reference engine
in-process on each, and `evaluation.tables` / `evaluation.report` turn the readings into the metrics
rPPG papers report (MAE, RMSE, MAPE, Pearson r, SNR, share within 3 / 5 bpm, split by confidence) and a
one-file HTML report. `vitalcam evaluate` is the command line for it.
"""

from evaluation.datasets import LAYOUTS, DatasetError, Recording, Reference, detect_layout, load
from evaluation.runner import Reading, RecordingResult, evaluate, evaluate_recording

__all__ = [
    "LAYOUTS",
    "DatasetError",
    "Reading",
    "Recording",
    "RecordingResult",
    "Reference",
    "detect_layout",
    "evaluate",
    "evaluate_recording",
    "load",
]
