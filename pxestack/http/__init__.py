"""HTTP: iPXE script rendering (pure), twisted.web resources and the site builder."""
