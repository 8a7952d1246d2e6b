"""The four core modalities; plugins may add more through the ``fmcore_modalities`` hook."""
