"""The points domain: point clouds (PLY, PCD, XYZ, PTS, NumPy) and surface meshes (OBJ, STL,
OFF, PLY with faces) read through open3d into Point-MAE's (N, 3 + F) samples."""
