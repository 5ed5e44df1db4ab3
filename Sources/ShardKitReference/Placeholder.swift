import ShardKit
