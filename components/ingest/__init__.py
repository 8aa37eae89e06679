"""Ingest-from-S3 component (DESIGN.md §1-2). Light constants here so `tlpipe --help` imports nothing heavy."""

DEDUPE_MODES = ("off", "exact", "near")
# Max Hamming distance (of 64 bits) between the flip/rotation-invariant dHashes of two near-duplicates. Flipped and
# rotated copies score 0, re-encoded copies 0-2, light re-crops (a few % per side) mostly <= 4; 4 keeps unrelated
# low-texture photos (same tank, same background) apart and the band index fast (5 bands of ~13 bits).
DEFAULT_NEAR_DUPLICATE_DISTANCE = 4
