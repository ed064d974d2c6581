"""The recovery service (``tierwatch recover``): Alertmanager webhooks drive recovery actions, safely."""
