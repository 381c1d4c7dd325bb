"""The API's routes, one module per area; `create_app` (serving/app.py) includes each router."""
