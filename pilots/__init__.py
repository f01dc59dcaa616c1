"""The pilot catalogue: what the city asks for (pilot specs) and who answers (vendor profiles)."""
