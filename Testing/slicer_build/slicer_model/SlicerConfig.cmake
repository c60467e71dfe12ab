# A stand-in for a Slicer 5.12 build tree's SlicerConfig.cmake, so that the extension's own CMakeLists.txt can be
# configured and built here without building Slicer (find_package(Slicer) with -DSlicer_DIR=<this folder>).
#
# It is NOT Slicer's code: UseSlicer.cmake beside it models what Slicer 5.12's slicerMacroBuildScriptedModule and
# CTK's ctkMacroCompilePythonScript do with SCRIPTS and RESOURCES, as read in their source (Slicer branch 5.12,
# CMake/SlicerMacroBuildScriptedModule.cmake; CTK 5056664a, CMake/ctkMacroCompilePythonScript.cmake): one copy
# rule per file, writing <build>/<Slicer_QTSCRIPTEDMODULES_LIB_DIR>/<path as listed>, byte-compiled, and the whole
# folder installed. The directory values are Slicer 5.12's (CMake/SlicerDirectories.cmake, UseSlicer.cmake.in, Linux).
set(Slicer_FOUND TRUE)
set(Slicer_VERSION_MAJOR 5)
set(Slicer_VERSION_MINOR 12)
set(Slicer_USE_FILE "${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake")
set(Slicer_EXTENSION_GENERATE_CONFIG "${CMAKE_CURRENT_LIST_DIR}/SlicerNothing.cmake")
set(Slicer_EXTENSION_CPACK "${CMAKE_CURRENT_LIST_DIR}/SlicerNothing.cmake")
