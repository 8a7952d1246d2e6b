"""Autoregressive pretraining under the trunk's attention masks: AIM (next token after a
bidirectional prefix) and ARM (next cluster of tokens, raster or random cluster order)."""
