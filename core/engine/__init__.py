"""The training engine: one loop for every domain and method, central or as a federated site."""
