// Implemented by the loader work.
