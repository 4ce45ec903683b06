"""Webhook delivery: a consumer of the topics subscriptions follow (its own group), which
stores one delivery per matching subscription and sends them (``leadstream serve webhooks``)."""
