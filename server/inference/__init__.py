"""rPPG inference: vitals from a vitalcam tensor (numpy and scipy only)."""
