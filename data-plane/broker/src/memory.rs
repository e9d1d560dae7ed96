//! In-process engine (filled by the broker helper).
