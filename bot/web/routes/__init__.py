"""The server's routes, one module per area: chat (the widget's API), widget (its page and script),
webhooks (the channels' routes), console (pages and JSON API) and health."""
