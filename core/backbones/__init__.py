"""Trunks shared by every modality."""
