"""Datastore adapters (outer ring: they import monailabel)."""
