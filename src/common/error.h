// rekey's error hierarchy, classified by what a retry can fix (as libpqxx does for SQL errors).
//
// Exceptions are for operations that must stop. Expected outcomes -- a ciphertext that fails to
// authenticate, a batch with nothing left to do -- are plain return values (see crypto/codec.h).
//
//   Error
//   ├── TransientError      a retry may succeed: broken connection, serialization failure,
//   │                       deadlock, KMS throttling, HTTP 5xx, timeouts
//   └── PermanentError      retrying cannot help until a person changes something
//       ├── ConfigError     bad flag, environment variable, master key or job definition
//       ├── KeyError        unknown key, wrong master key, disabled key, access denied
//       │   └── NoSuchKeyError  the keyring has no usable key of that id (unknown or destroyed):
//       │                       a fact about the data, not the environment
//       └── StateError      the database is not in a state that allows the step: illegal key
//                           lifecycle transition, migration drift, job already finished
//
// Messages are one line that says what is wrong and what to do. They never contain key
// material or passwords (see db/conninfo.h for redaction).
#pragma once

#include <stdexcept>
#include <string>

namespace rekey {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
  // True iff retrying the same operation later may succeed without human intervention.
  virtual bool transient() const = 0;
};

class TransientError : public Error {
 public:
  using Error::Error;
  bool transient() const override { return true; }
};

class PermanentError : public Error {
 public:
  using Error::Error;
  bool transient() const override { return false; }
};

class ConfigError : public PermanentError {
 public:
  using PermanentError::PermanentError;
};

class KeyError : public PermanentError {
 public:
  using PermanentError::PermanentError;
};

// Values under such a key cannot be decrypted by anyone: verification counts them as failures,
// whereas any other KeyError (the KMS refusing) stops the operation.
class NoSuchKeyError : public KeyError {
 public:
  using KeyError::KeyError;
};

class StateError : public PermanentError {
 public:
  using PermanentError::PermanentError;
};

// Process exit codes of the rekey binary (documented in README.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,    // unexpected failure (a bug or an unclassified error)
  kExitUsage = 2,      // bad command line, configuration or environment (ConfigError)
  kExitTransient = 3,  // database or KMS unreachable or overloaded; retry later
  kExitKey = 4,        // key problem: unknown key, wrong master key, KMS denied (KeyError)
  kExitState = 5,      // refused: illegal lifecycle step, migration drift, job state
};

// Maps an exception to the exit code the CLI returns for it: a rekey::Error by its row of the
// error table (common/error_table.h), anything else kExitFailure. db::Classify also knows
// libpqxx exceptions.
int ExitCodeFor(const std::exception& e);

}  // namespace rekey
