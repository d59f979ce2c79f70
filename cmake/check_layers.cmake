# Fails iff a source of a layer includes a header of a layer it may not use (cmake/layers.cmake):
# `cmake -DSOURCE_DIR=<repo> -P cmake/check_layers.cmake`. Run by every build (target
# check_layers) and by ctest (layers_check, label unit). Tests (*_test.cpp) are exempt: a test may
# reach any layer, as tests/ does.
cmake_minimum_required(VERSION 3.20)
if(NOT SOURCE_DIR)
  message(FATAL_ERROR "check_layers: pass -DSOURCE_DIR=<repository root>")
endif()
include(${CMAKE_CURRENT_LIST_DIR}/layers.cmake)

set(violations "")
foreach(layer ${REKEY_LAYERS})
  if(layer STREQUAL "worker")
    set(dir ${SOURCE_DIR}/worker)
  else()
    set(dir ${SOURCE_DIR}/src/${layer})
  endif()
  rekey_layer_closure(${layer} allowed)
  file(GLOB_RECURSE files ${dir}/*.h ${dir}/*.cpp)
  list(FILTER files EXCLUDE REGEX "_test\\.cpp$")
  foreach(file ${files})
    file(STRINGS ${file} includes REGEX "^[ \t]*#[ \t]*include[ \t]+\"[a-z_]+/")
    foreach(line ${includes})
      string(REGEX REPLACE "^[ \t]*#[ \t]*include[ \t]+\"([a-z_]+)/([^\"]*)\".*" "\\1;\\2"
             parts "${line}")
      list(GET parts 0 used)
      list(GET parts 1 header)
      if(used STREQUAL layer OR NOT used IN_LIST REKEY_LAYERS OR used IN_LIST allowed)
        continue()
      endif()
      file(RELATIVE_PATH shown ${SOURCE_DIR} ${file})
      string(REPLACE ";" ", " allowed_text "${allowed}")
      string(APPEND violations
             "\n  ${shown} includes \"${used}/${header}\": ${layer} -> ${used} is a back-edge "
             "(${layer} may use: ${allowed_text})")
    endforeach()
  endforeach()
endforeach()

if(violations)
  message(FATAL_ERROR "layer check failed (cmake/layers.cmake, docs/ARCHITECTURE.md):"
                      "${violations}\nMove the declaration down a layer, or invert the "
                      "dependency with an interface the lower layer owns.")
endif()
