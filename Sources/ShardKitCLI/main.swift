import ShardKit
@main struct Main { static func main() {} }
