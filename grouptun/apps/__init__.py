"""What the group offers applications beside the tunnel: crypto-products, export files, sealed data."""
