"""Federated training across hospitals on Flower: sites train the `mediflow train` recipe locally
and exchange only the trainable parameters and aggregate statistics (docs/federated.md).

Layers: partition (simulated sites) and stats (histogram statistics, DP accounting) need no Flower;
site runs the training loop for one hospital; apps holds the Flower ClientApp/ServerApp; deploy binds
them to Flower's Deployment Engine (SuperLink/SuperNode node and run configs, the app bundle).
"""
