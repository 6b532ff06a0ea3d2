"""Attribution: kernel -> launch -> enclosing scopes -> layer (index, module, type); names as fallback."""
