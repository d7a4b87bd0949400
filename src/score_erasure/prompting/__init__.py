"""Prompts as token sequences with optimisable slots, and the denoising objective that scores them: the
primitives that attacks and the methods that train against an inner attack (score-robust) share."""
