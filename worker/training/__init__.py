"""The method's training half, one module per stage, over one training directory (see `directory`).

sample → score → coarse → pairs → fine: synthetic codes, a double-chin probability per code, the coarse W-space
boundary, pairs of codes of one face with and without the chin, and the fine per-layer boundary the service
edits with. `classifier` trains the scorer the seed used. Every stage skips work already on disk.
"""
