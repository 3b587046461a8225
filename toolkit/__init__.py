"""Small helpers any matmine program may import; nothing here imports the rest of matmine."""
