# rekey's layers (docs/ARCHITECTURE.md): one library per src/ folder, each allowed to use only the
# layers below it. The one place the rule is written down; CMakeLists.txt builds the libraries and
# their include views from it, cmake/check_layers.cmake checks every #include against it.
#
#   common -> db, crypto -> kms, jobs, audit -> keyring -> rotation -> ops -> worker
#
# REKEY_LAYER_DEPS_<layer>: the layers <layer> uses directly; it may use theirs too (closure).
set(REKEY_LAYERS common db crypto kms jobs audit keyring rotation ops worker)
set(REKEY_LAYER_DEPS_common "")
set(REKEY_LAYER_DEPS_db common)
set(REKEY_LAYER_DEPS_crypto common)
set(REKEY_LAYER_DEPS_kms db crypto)
set(REKEY_LAYER_DEPS_jobs db crypto)
set(REKEY_LAYER_DEPS_audit db crypto)
set(REKEY_LAYER_DEPS_keyring kms jobs audit)
set(REKEY_LAYER_DEPS_rotation keyring)
set(REKEY_LAYER_DEPS_ops rotation)
set(REKEY_LAYER_DEPS_worker ops)

# rekey_layer_closure(<layer> <out-var>): every layer <layer> may use, itself excluded.
function(rekey_layer_closure layer out)
  set(result "")
  set(todo ${REKEY_LAYER_DEPS_${layer}})
  while(todo)
    list(POP_FRONT todo next)
    if(NOT next IN_LIST result)
      list(APPEND result ${next})
      list(APPEND todo ${REKEY_LAYER_DEPS_${next}})
    endif()
  endwhile()
  set(${out} ${result} PARENT_SCOPE)
endfunction()
