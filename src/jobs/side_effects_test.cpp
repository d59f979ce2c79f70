#include "jobs/side_effects.h"

#include <gtest/gtest.h>

namespace rekey::jobs {
namespace {

TableShape Shape() {
  TableShape s;
  s.heap_bytes = 800 * 8192;
  s.rows = 40000;
  s.row_bytes = 120;
  s.full_page_writes = true;
  return s;
}

TEST(EstimateRewriteTest, AnIndexOnAWrittenColumnRulesOutHotAndAddsAnEntryPerIndex) {
  const std::vector<TableIndex> pk = {{"pk", "", false, 100 * 8192, 40000}};
  std::vector<TableIndex> with_token = pk;
  with_token.push_back({"token_idx", "", true, 400 * 8192, 40000});
  TableShape roomy = Shape();
  roomy.fillfactor = 50;  // every page has room for a new version of each of its rows
  const RewriteEstimate hot = EstimateRewrite(roomy, pk, 40000, 40);
  const RewriteEstimate cold = EstimateRewrite(roomy, with_token, 40000, 40);
  EXPECT_TRUE(hot.hot_possible);
  EXPECT_DOUBLE_EQ(hot.hot_share, 1.0);
  EXPECT_FALSE(cold.hot_possible);
  EXPECT_DOUBLE_EQ(cold.hot_share, 0.0);
  const int64_t bookkeeping = 16 * 8192 + 40 * 1500;
  // HOT: heap records, one full-page image per heap page, bookkeeping; no growth.
  EXPECT_EQ(hot.wal_bytes, 40000 * (120 + 60) + 800 * 8192 + bookkeeping);
  EXPECT_EQ(hot.table_growth_bytes, 0);
  // Not HOT: every index gets an entry (its bytes per entry, and the record's), and its pages.
  const int64_t entries = 20 + 81;  // 100 and 400 pages of 40000 entries each
  EXPECT_EQ(cold.wal_bytes,
            40000 * (120 + 60) + 40000 * (entries + 2 * 50) + (800 + 500) * 8192 + bookkeeping);
  EXPECT_EQ(cold.table_growth_bytes, 40000 * (120 + 4 + entries));
}

TEST(EstimateRewriteTest, AFullPageLeavesNoRoomForHotUpdates) {
  const std::vector<TableIndex> pk = {{"pk", "", false, 100 * 8192, 40000}};
  TableShape s = Shape();  // fillfactor 100
  const RewriteEstimate e = EstimateRewrite(s, pk, 40000, 40);
  EXPECT_TRUE(e.hot_possible);
  EXPECT_DOUBLE_EQ(e.hot_share, 0.0);
  s.fillfactor = 80;  // a quarter of the rows find room
  EXPECT_DOUBLE_EQ(EstimateRewrite(s, pk, 40000, 40).hot_share, 0.25);
}

TEST(EstimateRewriteTest, APartOfTheTableTouchesItsShareOfPagesAndNoImagesWithoutFullPageWrites) {
  TableShape s = Shape();
  s.fillfactor = 50;
  const RewriteEstimate quarter = EstimateRewrite(s, {}, 10000, 10);
  EXPECT_EQ(quarter.wal_bytes, 10000 * (120 + 60) + 200 * 8192 + 16 * 8192 + 10 * 1500);
  s.full_page_writes = false;
  EXPECT_EQ(EstimateRewrite(s, {}, 10000, 10).wal_bytes, 10000 * (120 + 60) + 10 * 1500);
}

TEST(TriggerChoiceTest, ReplicaModeFiresOnlyReplicaAndAlwaysTriggers) {
  UserTrigger t;
  t.on_rewrite = true;
  for (const auto& [enabled, fire, skip] : std::vector<std::tuple<std::string, bool, bool>>{
           {"O", true, false}, {"D", false, false}, {"R", false, true}, {"A", true, true}}) {
    t.enabled = enabled;
    EXPECT_EQ(t.FiresUnder(TriggerChoice::kFire), fire) << enabled;
    EXPECT_EQ(t.FiresUnder(TriggerChoice::kNone), fire) << enabled;
    EXPECT_EQ(t.FiresUnder(TriggerChoice::kSkip), skip) << enabled;
  }
  t.enabled = "O";
  t.on_rewrite = false;  // UPDATE OF another column, or no UPDATE event
  EXPECT_FALSE(t.FiresUnder(TriggerChoice::kFire));
  EXPECT_EQ(ParseTriggerChoice("skip"), TriggerChoice::kSkip);
  EXPECT_EQ(ParseTriggerChoice("fire"), TriggerChoice::kFire);
  EXPECT_FALSE(ParseTriggerChoice("Fire").has_value());
}

}  // namespace
}  // namespace rekey::jobs
