#include "harness/pg_ssl.h"

#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include "harness/process.h"

namespace rekey::testing {
namespace {

void Run(const std::vector<std::string>& argv) {
  ProcessResult r = RunProcess(argv, {}, "", 60);
  if (r.exit_code != 0) {
    throw std::runtime_error(argv[0] + " " + argv[1] + " failed: " + r.err);
  }
}

// An EC P-256 key and a certificate: self-signed (a CA) when ca_key is empty, else signed by it.
void MakeCert(const std::string& dir, const std::string& name, const std::string& subject,
              const std::string& ca_name) {
  const std::string key = dir + "/" + name + ".key";
  const std::string crt = dir + "/" + name + ".crt";
  if (ca_name.empty()) {
    Run({"openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", subject});
    return;
  }
  const std::string csr = dir + "/" + name + ".csr";
  const std::string ext = dir + "/" + name + ".ext";
  std::ofstream(ext) << "subjectAltName=DNS:localhost,IP:127.0.0.1\n";
  Run({"openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
       "-nodes", "-keyout", key, "-out", csr, "-subj", subject});
  Run({"openssl", "x509", "-req", "-in", csr, "-CA", dir + "/" + ca_name + ".crt", "-CAkey",
       dir + "/" + ca_name + ".key", "-CAcreateserial", "-out", crt, "-days", "2", "-extfile",
       ext});
}

// Copies `from` into the data directory as a file the server's OS user owns with `mode`
// (PostgreSQL refuses a key file others can read).
void Install(const std::string& from, const std::string& to, mode_t mode) {
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing);
  if (chmod(to.c_str(), mode) != 0) {
    throw std::runtime_error("chmod " + to + ": " + std::strerror(errno));
  }
  if (geteuid() == 0) {
    passwd* pw = getpwnam("postgres");
    if (pw == nullptr || chown(to.c_str(), pw->pw_uid, pw->pw_gid) != 0) {
      throw std::runtime_error("chown postgres " + to + ": " + std::strerror(errno));
    }
  }
}

}  // namespace

PgSsl EnableSsl(PgServer& server, const std::string& hba_lines) {
  PgSsl ssl;
  ssl.dir = MakeTempDir("rekey-ssl-");
  MakeCert(ssl.dir, "ca", "/CN=rekey test CA", "");
  MakeCert(ssl.dir, "other-ca", "/CN=some other CA", "");
  MakeCert(ssl.dir, "server", "/CN=localhost", "ca");
  ssl.ca_cert = ssl.dir + "/ca.crt";
  ssl.other_ca_cert = ssl.dir + "/other-ca.crt";

  const std::string data = server.data_dir();
  Install(ssl.dir + "/server.crt", data + "/rekey-test-server.crt", 0644);
  Install(ssl.dir + "/server.key", data + "/rekey-test-server.key", 0600);
  {
    std::ofstream hba(data + "/pg_hba.conf", std::ios::trunc);
    hba << "# rekey test harness (pg_ssl.cpp)\nlocal all all trust\n"
        << "hostssl all postgres 127.0.0.1/32 trust\n"
        << hba_lines << "\n";
    if (!hba) throw std::runtime_error("cannot write " + data + "/pg_hba.conf");
  }
  {
    pqxx::connection admin(server.ConnInfo("postgres"));
    pqxx::nontransaction tx(admin);
    tx.exec("ALTER SYSTEM SET ssl_cert_file = 'rekey-test-server.crt'");
    tx.exec("ALTER SYSTEM SET ssl_key_file = 'rekey-test-server.key'");
    tx.exec("ALTER SYSTEM SET ssl = on");
    tx.exec("SELECT pg_reload_conf()");
  }
  // The reload is asynchronous; a TLS connection over TCP proves it took effect.
  const std::string probe = "host=127.0.0.1 port=" + std::to_string(server.port()) +
                            " dbname=postgres user=postgres sslmode=require";
  std::string last;
  for (int i = 0; i < 100; ++i) {
    try {
      pqxx::connection c(probe);
      return ssl;
    } catch (const std::exception& e) {
      last = e.what();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  throw std::runtime_error("the test PostgreSQL did not accept TLS after ssl=on: " + last +
                           "; server log tail:\n" + server.LogTail());
}

}  // namespace rekey::testing
