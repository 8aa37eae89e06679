"""The tlpipe KFP pipeline, the embedded local stack and the `tlpipe` command line."""
