"""rPPG inference: vitals from a vitalcam tensor (numpy and scipy only).

Contract with the server: `infer(measurement, demographics) -> InferenceResult`, raising
`InferenceFailed(reason, message)` when the data cannot support a measurement; the server then answers
with fallback vitals and confidence 0.0. `analyze(measurement) -> Analysis` exposes the arrays behind the
numbers (pulse waveform, spectrum, HR track, breathing, beats) for reports; `infer` is built on it.

Modules: conditioning (uniform grid, gaps, coverage), pulse (POS/CHROM, fused spectrum, HR track),
hrv (beats, SDNN, RMSSD), respiration (four respiratory sources, fused), priors (SpO2, blood pressure),
confidence (per-vital confidence), engine (the pipeline). docs/vitals.md describes methods and limits.
"""

from __future__ import annotations

from server.inference.engine import Analysis, Estimate, InferenceResult, analyze, infer
from server.inference.errors import FailureReason, InferenceFailed

__all__ = ["Analysis", "Estimate", "FailureReason", "InferenceFailed", "InferenceResult", "analyze", "infer"]
