// main() of every test executable: GoogleTest plus the environment that stops the test
// PostgreSQL (if one was started) after the last test.
#include <gtest/gtest.h>
#include <signal.h>

#include "harness/pg_server.h"

namespace {

class PgServerEnvironment : public ::testing::Environment {
 public:
  void TearDown() override { rekey::testing::PgServer::StopIfStarted(); }
};

}  // namespace

int main(int argc, char** argv) {
  // A server that goes away mid-test must surface as a broken connection, not kill the process.
  signal(SIGPIPE, SIG_IGN);
  ::testing::InitGoogleTest(&argc, argv);
  ::testing::AddGlobalTestEnvironment(new PgServerEnvironment);
  return RUN_ALL_TESTS();
}
