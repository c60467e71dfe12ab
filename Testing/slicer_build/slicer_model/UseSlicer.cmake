# Model of the parts of Slicer 5.12's UseSlicer.cmake that scripted modules use (see SlicerConfig.cmake beside it).
set(Slicer_USE_PYTHONQT ON)
set(Slicer_LIB_DIR "lib/Slicer-${Slicer_VERSION_MAJOR}.${Slicer_VERSION_MINOR}")
set(Slicer_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_LIB_DIR}/qt-scripted-modules")
set(Slicer_INSTALL_ROOT "./")
set(Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR "${Slicer_INSTALL_ROOT}${Slicer_QTSCRIPTEDMODULES_LIB_DIR}")
find_package(Python3 COMPONENTS Interpreter REQUIRED)

# ctkMacroCompilePythonScript(TARGET_NAME SCRIPTS RESOURCES [SOURCE_DIR] DESTINATION_DIR INSTALL_DIR [NO_INSTALL_SUBDIR])
# What CTK does: every script (".py" appended when its extension is not py) and every resource, taken from
# SOURCE_DIR (default: the current source folder) by the path it is listed with, gets a custom command whose OUTPUT
# is DESTINATION_DIR/<that same relative path>; targets Copy<T>PythonScriptFiles, Copy<T>PythonResourceFiles and
# Compile<T>PythonFiles (byte-compiles the copies); install(DIRECTORY DESTINATION_DIR[/]) into INSTALL_DIR.
# Two calls listing the same relative path with the same DESTINATION_DIR are two rules writing one file, as in CTK.
macro(ctkMacroCompilePythonScript)
  cmake_parse_arguments(MY "NO_INSTALL_SUBDIR;GLOBAL_TARGET" "TARGET_NAME;SOURCE_DIR;DESTINATION_DIR;INSTALL_DIR"
    "SCRIPTS;RESOURCES" ${ARGN})
  if(NOT DEFINED MY_SOURCE_DIR)
    set(MY_SOURCE_DIR ${CMAKE_CURRENT_SOURCE_DIR})
  endif()
  get_filename_component(MY_SOURCE_DIR ${MY_SOURCE_DIR} REALPATH)
  get_filename_component(MY_DESTINATION_DIR ${MY_DESTINATION_DIR} REALPATH)
  set(_copied_scripts)
  set(_copied_resources)
  foreach(_kind SCRIPTS RESOURCES)
    foreach(_file ${MY_${_kind}})
      if(_kind STREQUAL "SCRIPTS")
        get_filename_component(_ext ${_file} EXT)
        if(NOT "${_ext}" MATCHES "py")
          set(_file "${_file}.py")
        endif()
      endif()
      if(IS_ABSOLUTE ${_file})
        set(_src ${_file})
        file(RELATIVE_PATH _file ${CMAKE_CURRENT_BINARY_DIR} ${_file})
      else()
        set(_src ${MY_SOURCE_DIR}/${_file})
      endif()
      set(_tgt ${MY_DESTINATION_DIR}/${_file})
      add_custom_command(DEPENDS ${_src} COMMAND ${CMAKE_COMMAND} -E copy ${_src} ${_tgt} OUTPUT ${_tgt}
        COMMENT "Copying python file: ${_file}")
      if(_kind STREQUAL "SCRIPTS")
        list(APPEND _copied_scripts ${_tgt})
      else()
        list(APPEND _copied_resources ${_tgt})
      endif()
    endforeach()
  endforeach()
  add_custom_target(Copy${MY_TARGET_NAME}PythonScriptFiles ALL DEPENDS ${_copied_scripts})
  if(_copied_resources)
    add_custom_target(Copy${MY_TARGET_NAME}PythonResourceFiles ALL DEPENDS ${_copied_resources})
  endif()
  add_custom_command(OUTPUT ${CMAKE_CURRENT_BINARY_DIR}/python_compile_${MY_TARGET_NAME}_complete
    COMMAND ${Python3_EXECUTABLE} -m py_compile ${_copied_scripts}
    COMMAND ${CMAKE_COMMAND} -E touch ${CMAKE_CURRENT_BINARY_DIR}/python_compile_${MY_TARGET_NAME}_complete
    DEPENDS Copy${MY_TARGET_NAME}PythonScriptFiles ${_copied_scripts}
    COMMENT "Compiling python scripts: ${MY_TARGET_NAME}")
  add_custom_target(Compile${MY_TARGET_NAME}PythonFiles ALL
    DEPENDS ${CMAKE_CURRENT_BINARY_DIR}/python_compile_${MY_TARGET_NAME}_complete)
  set(_to_install ${MY_DESTINATION_DIR})
  if(MY_NO_INSTALL_SUBDIR)
    set(_to_install ${MY_DESTINATION_DIR}/)
  endif()
  install(DIRECTORY "${_to_install}" DESTINATION "${MY_INSTALL_DIR}" COMPONENT RuntimeLibraries USE_SOURCE_PERMISSIONS)
endmacro()

# slicerMacroBuildScriptedModule(NAME SCRIPTS RESOURCES [WITH_GENERIC_TESTS] [WITH_SUBDIR])
# What Slicer does: refuse a listed file that does not exist, then one ctkMacroCompilePythonScript call whose
# DESTINATION_DIR is the build's qt-scripted-modules folder (a subfolder named after the module only WITH_SUBDIR),
# so that every module's Resources/... lands in one shared qt-scripted-modules/Resources/ folder.
macro(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY_SLICER "WITH_GENERIC_TESTS;WITH_SUBDIR;VERBOSE" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  if(MY_SLICER_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "Unknown keywords given to slicerMacroBuildScriptedModule(): \"${MY_SLICER_UNPARSED_ARGUMENTS}\"")
  endif()
  foreach(_var SCRIPTS RESOURCES)
    foreach(_value ${MY_SLICER_${_var}})
      if(NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_value} AND NOT EXISTS ${CMAKE_CURRENT_SOURCE_DIR}/${_value}.py)
        message(FATAL_ERROR "slicerMacroBuildScriptedModule(${_var}) given nonexistent file or directory '${_value}'")
      endif()
    endforeach()
  endforeach()
  set(_subdir "")
  set(_no_install_subdir NO_INSTALL_SUBDIR)
  if(MY_SLICER_WITH_SUBDIR)
    get_filename_component(_subdir ${CMAKE_CURRENT_SOURCE_DIR} NAME)
    set(_subdir "/${_subdir}")
    set(_no_install_subdir "")
  endif()
  ctkMacroCompilePythonScript(
    TARGET_NAME ${MY_SLICER_NAME}
    SCRIPTS "${MY_SLICER_SCRIPTS}"
    RESOURCES "${MY_SLICER_RESOURCES}"
    DESTINATION_DIR ${CMAKE_BINARY_DIR}/${Slicer_QTSCRIPTEDMODULES_LIB_DIR}${_subdir}
    INSTALL_DIR ${Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR}
    ${_no_install_subdir}
    )
endmacro()

# Registers a module's self-test with CTest in Slicer; here BUILD_TESTING is OFF and nothing is registered.
macro(slicer_add_python_unittest)
endmacro()
