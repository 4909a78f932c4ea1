"""Provider adapters: one module per wire format, one internal shape (:mod:`.base`)."""
