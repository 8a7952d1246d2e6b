"""Robot demonstrations: LeRobot datasets and HDF5 episodes (docs/robotics.md)."""
