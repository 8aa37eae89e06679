"""Ingest-from-S3 component (DESIGN.md §1-2). Light constants here so `tlpipe --help` imports nothing heavy."""

DEDUPE_MODES = ("off", "exact", "near")
# Max Hamming distance (of 64 bits) between the flip/rotation-invariant DCT perceptual hashes of near-duplicates.
# Flipped/rotated copies score 0-2 and re-encoded ones 0-2; on the real fish frames (1053 images, 161 videos) 4 joins
# 21 cross-video pairs of 540k (a difference hash joined 419), so unrelated low-texture photos stay apart. Re-crops
# of more than ~2% per side move the hash by 4-20 bits: name the source with group_pattern to catch those.
DEFAULT_NEAR_DUPLICATE_DISTANCE = 4
