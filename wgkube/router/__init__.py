"""`wg-kube router`: ordinary cluster nodes route the overlay via the hub."""
