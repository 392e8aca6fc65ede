//! `librgtp_shim.so`: the LD_PRELOAD shim (issue 4). Not implemented yet; this crate
//! only builds so the workspace layout is in place.
