"""Federated pretraining with Flower: each site trains with the core engine, the server aggregates.

``fmcore federate`` runs a federation in Flower's simulation runtime; :mod:`.apps` holds the
ServerApp and ClientApp that ``flwr run`` starts on a real SuperLink with one SuperNode per site.
"""
