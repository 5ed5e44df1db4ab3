extension SplitRule {
    /// The global intervals along `dim` that rank `rank` of `ranks` holds, for a dimension of size
    /// `size`. Throws `impossibleSplit` naming `tensor` and the numbers when the split is not allowed.
    public func layout(rank: Int, of ranks: Int, size: Int, tensor: String) throws -> PieceLayout {
        func refuse(_ why: String) -> ShardKitError {
            ShardKitError(.impossibleSplit, "tensor \(tensor): cannot split \(why) across \(ranks) ranks")
        }
        guard ranks >= 1 else { throw ShardKitError(.impossibleSplit, "TP degree must be at least 1, got \(ranks)") }
        guard rank >= 0 && rank < ranks else {
            throw ShardKitError(.notFound, "rank \(rank) out of range 0..<\(ranks)")
        }
        func even(_ n: Int, what: String) throws -> Range<Int> {
            guard n % ranks == 0 else { throw refuse("\(what) of size \(n) (\(n) % \(ranks) = \(n % ranks))") }
            // rank·(n/G), not rank·n/G: the product stays within n and cannot overflow.
            let per = n / ranks
            return (rank * per)..<((rank + 1) * per)
        }
        func byHeads(_ n: Int, heads: Int, kv: Bool) throws -> Range<Int> {
            guard heads > 0, n % heads == 0 else {
                throw refuse("dimension \(n) into \(heads) \(kv ? "KV " : "")heads "
                             + "(\(n) is not a multiple of \(heads))")
            }
            let hd = n / heads
            if heads >= ranks || !kv {
                guard heads % ranks == 0 else {
                    throw refuse("\(heads) \(kv ? "KV " : "")heads (\(heads) % \(ranks) = \(heads % ranks))")
                }
                let per = heads / ranks
                return (rank * per * hd)..<((rank + 1) * per * hd)
            }
            guard ranks % heads == 0 else {
                throw refuse("\(heads) KV heads (\(ranks) is neither a divisor nor a multiple of \(heads))")
            }
            let h = rank * heads / ranks
            return (h * hd)..<((h + 1) * hd)
        }
        switch self {
        case .replicated:
            return PieceLayout([0..<size])
        case .column:
            return PieceLayout([try even(size, what: "output dimension")])
        case .row:
            return PieceLayout([try even(size, what: "input dimension")])
        case .heads(_, let h), .outProjection(_, let h):
            return PieceLayout([try byHeads(size, heads: h, kv: false)])
        case .kvHeads(_, let h):
            return PieceLayout([try byHeads(size, heads: h, kv: true)])
        case .vocab(_, let multiple):
            guard let padded = SplitRule.checkedPaddedSize(size, ranks: ranks, multiple: multiple) else {
                throw refuse("vocab dimension \(size) (padding it to a multiple of lcm(\(multiple), \(ranks)) "
                             + "overflows)")
            }
            let per = padded / ranks
            return PieceLayout([(rank * per)..<((rank + 1) * per)])
        case .units(_, let u):
            return try u.layout(rank: rank, of: ranks, size: size, tensor: tensor)
        case .padded(let base, let m):
            guard let padded = SplitRule.checkedPaddedSize(size, ranks: ranks, multiple: m, shares: true) else {
                throw refuse("dimension \(size) (padding it to a multiple of \(ranks) × \(m) overflows)")
            }
            return try base.layout(rank: rank, of: ranks, size: padded, tensor: tensor)
        case .fused(_, let parts):
            let total = checkedSum(parts.map(\.size))
            guard let total, total == size else {
                let sum = total.map(String.init) ?? "more than \(Int.max)"
                throw ShardKitError(.impossibleSplit,
                    "tensor \(tensor): fused parts \(parts.map(\.size)) add up to \(sum), but the dimension is \(size)")
            }
            var segments: [Range<Int>] = []
            var base = 0
            for (i, part) in parts.enumerated() {
                let local: Range<Int>
                switch part.split {
                case .even: local = try even(part.size, what: "fused part \(i)")
                case .heads(let h): local = try byHeads(part.size, heads: h, kv: false)
                case .kvHeads(let h): local = try byHeads(part.size, heads: h, kv: true)
                case .replicated: local = 0..<part.size
                }
                let g = (base + local.lowerBound)..<(base + local.upperBound)
                if let last = segments.last, last.upperBound == g.lowerBound {
                    segments[segments.count - 1] = last.lowerBound..<g.upperBound
                } else {
                    segments.append(g)
                }
                base += part.size
            }
            return PieceLayout(segments)
        }
    }

    /// The dimension's size once padded for `ranks` (vocab rules pad, and companions of a padded
    /// vocab rule).
    /// (A size whose padding would overflow gives `Int.max`; `layout` refuses it.)
    public func paddedSize(_ size: Int, ranks: Int) -> Int {
        if case .vocab(_, let m) = self {
            return SplitRule.checkedPaddedSize(size, ranks: ranks, multiple: m) ?? Int.max
        }
        if case .padded(_, let m) = self {
            return SplitRule.checkedPaddedSize(size, ranks: ranks, multiple: m, shares: true) ?? Int.max
        }
        if case .units(_, let u) = self, u.base.paddedSize(u.size, ranks: ranks) != u.size {
            let padded = u.base.paddedSize(u.size, ranks: ranks)
            return padded == Int.max ? padded : padded / u.unit + (padded % u.unit == 0 ? 0 : 1)
        }
        return size
    }

    /// `size` rounded up to a multiple of lcm(`multiple`, `ranks`) (`shares`: of `ranks` × `multiple`,
    /// so that each rank's share is a multiple of `multiple`), nil on overflow (or a non-positive
    /// `ranks` or `multiple`).
    static func checkedPaddedSize(_ size: Int, ranks: Int, multiple: Int = 1, shares: Bool = false) -> Int? {
        guard ranks >= 1, multiple >= 1, size >= 0 else { return nil }
        var a = ranks, b = multiple
        while b != 0 { (a, b) = (b, a % b) }
        guard let unit = checkedProduct([shares ? ranks : ranks / a, multiple]) else { return nil }
        let (q, r) = size.quotientAndRemainder(dividingBy: unit)
        if r == 0 { return size }
        let (p, overflow) = (q + 1).multipliedReportingOverflow(by: unit)
        return overflow ? nil : p
    }
}

/// Every rank's layout of rules applied to dimensions, computed once per distinct (rule, size): the
/// tensors of a checkpoint share a handful of them, so a plan of a million tensors holds a handful of
/// layout arrays, each shared (copy-on-write) by the tensors that use it.
struct RuleLayouts {
    struct Key: Hashable { var rule: SplitRule; var size: Int }
    let ranks: Int
    private var cache: [Key: [PieceLayout]] = [:]

    init(ranks: Int) { self.ranks = ranks }

    /// The layouts of `rule` for a dimension of `size`, rank by rank (errors name `tensor`).
    mutating func callAsFunction(_ rule: SplitRule, size: Int, tensor: String) throws -> [PieceLayout] {
        let key = Key(rule: rule, size: size)
        if let known = cache[key] { return known }
        let layouts = try (0..<ranks).map { try rule.layout(rank: $0, of: ranks, size: size, tensor: tensor) }
        if cache.count < 65_536 { cache[key] = layouts }
        return layouts
    }
}

extension UnitSplit {
    /// Rank `rank`'s intervals of the companion (of `size` units): the base rule's intervals of the
    /// weight's indices, counted in units. Throws naming the numbers when `exact` and a boundary cuts
    /// a unit.
    func layout(rank: Int, of ranks: Int, size companion: Int, tensor: String) throws -> PieceLayout {
        guard unit >= 1, self.size >= 0, companion == units else {
            throw ShardKitError(.impossibleSplit, "tensor \(tensor): \(companion) indices along the split dimension, "
                                + "but \(self.size) split in units of \(unit) gives \(unit >= 1 ? units : 0) (\(what))")
        }
        let weight = try base.layout(rank: rank, of: ranks, size: self.size, tensor: tensor)
        var segments: [Range<Int>] = []
        for s in weight.segments where !s.isEmpty {
            if exact {
                for b in [s.lowerBound, s.upperBound] where b % unit != 0 && b != self.size {
                    throw ShardKitError(.impossibleSplit,
                        "tensor \(tensor): at \(ranks) ranks, rank \(rank) holds indices "
                        + "\(s.lowerBound)..<\(s.upperBound) "
                        + "of \(self.size) (\(s.count) per rank), which is not a multiple of \(what)")
                }
            }
            let a = s.lowerBound / unit, b = s.upperBound / unit + (s.upperBound % unit == 0 ? 0 : 1)
            if let last = segments.last, last.upperBound >= a {
                segments[segments.count - 1] = last.lowerBound..<max(last.upperBound, b)
            } else {
                segments.append(a..<b)
            }
        }
        return PieceLayout(segments)
    }
}
