"""The HTTP server: create_app (app.py, the composition root), the operator console (console.py,
auth.py), /healthz (health.py), the outbox dispatcher and re-announcer (background.py), request
ids / body limit / error JSON (middleware.py), and the widget, demo page and console assets (static/).
"""
