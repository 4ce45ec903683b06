"""Webhook subscriptions (``/v1/subscriptions``, scope ``subscriptions``): who receives which
events over HTTP, and their deliveries. The pipeline service serves the API; the webhooks
process (``services/webhooks``) delivers."""
