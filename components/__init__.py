"""tlpipe components: each folder holds a plain-Python core and a thin KFP adapter (see docs/DESIGN.md)."""
