"""Study files and the settings of one `tune`: what a lab task searches, fixes and spends."""
