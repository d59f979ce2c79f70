// TLS for the test PostgreSQL: a throwaway CA and server certificate made with the openssl CLI,
// and the process's PgServer switched to ssl=on with a caller-given pg_hba.conf.
//
// Only tests that call EnableSsl pay for it (a few hundred milliseconds: EC keys, one reload);
// the server of every other test binary stays as it is. The change lasts for the server's life,
// i.e. the rest of the test process.
//
// Thread-safety: call EnableSsl once, before the tests connect over TCP.
#pragma once

#include <string>

#include "harness/pg_server.h"

namespace rekey::testing {

struct PgSsl {
  std::string dir;            // temp dir holding the files below; the caller removes it
  std::string ca_cert;        // PEM of the CA that signed the server certificate
  std::string other_ca_cert;  // PEM of an unrelated CA (for "wrong CA" cases)
};

// Makes a CA and a server certificate for CN=localhost, subjectAltName DNS:localhost and
// IP:127.0.0.1, installs them in `server`'s data directory, replaces its pg_hba.conf with
// `hba_lines`, preceded by `local all all trust` (the harness's own socket connections) and
// `hostssl all postgres 127.0.0.1/32 trust` (the readiness probe), turns ssl on and reloads.
// Returns once a TLS connection over TCP is accepted. Throws std::runtime_error with the reason
// (and the server log tail) otherwise.
PgSsl EnableSsl(PgServer& server, const std::string& hba_lines);

}  // namespace rekey::testing
