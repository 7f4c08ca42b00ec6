"""Data in and out: the one dataset loader (`datasets`), content fingerprints (`fingerprint`), offline
images (`images_offline`)."""
