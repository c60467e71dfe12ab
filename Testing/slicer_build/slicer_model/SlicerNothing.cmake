# Stands in for Slicer's extension config / CPack scripts, which package a build and need a real Slicer.
