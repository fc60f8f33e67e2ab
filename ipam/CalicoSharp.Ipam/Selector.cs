namespace CalicoSharp.Ipam;

/// <summary>A Calico label selector: <c>all()</c>, <c>has(k)</c>, <c>k == 'v'</c>, <c>k != 'v'</c>,
/// <c>k in {'a','b'}</c>, <c>k not in {...}</c>, combined with <c>!</c>, <c>&amp;&amp;</c>, <c>||</c> and parentheses.
/// An empty selector means <c>all()</c>, as in Calico's IP pools.</summary>
public sealed class Selector
{
    private readonly Func<IReadOnlyDictionary<string, string>, bool> eval;

    private Selector(string text, Func<IReadOnlyDictionary<string, string>, bool> eval)
    {
        Text = text;
        this.eval = eval;
    }

    public string Text { get; }

    public static Selector All { get; } = new("all()", _ => true);

    public bool Matches(IReadOnlyDictionary<string, string> labels) => eval(labels);

    public static Selector Parse(string? text)
    {
        if (string.IsNullOrWhiteSpace(text))
        {
            return All;
        }

        var p = new Parser(text);
        var f = p.ParseOr();
        p.SkipSpace();
        if (!p.AtEnd)
        {
            throw p.Error("unexpected text");
        }

        return new Selector(text, f);
    }

    public override string ToString() => Text;

    private sealed class Parser(string s)
    {
        private int pos;

        public bool AtEnd => pos >= s.Length;

        public Func<IReadOnlyDictionary<string, string>, bool> ParseOr()
        {
            var left = ParseAnd();
            while (TryToken("||"))
            {
                var l = left;
                var r = ParseAnd();
                left = labels => l(labels) || r(labels);
            }

            return left;
        }

        public void SkipSpace()
        {
            while (pos < s.Length && char.IsWhiteSpace(s[pos]))
            {
                pos++;
            }
        }

        public IpamException Error(string what) =>
            new(IpamErrorKind.InvalidArgument, $"invalid selector \"{s}\": {what} at position {pos + 1}");

        private Func<IReadOnlyDictionary<string, string>, bool> ParseAnd()
        {
            var left = ParseUnary();
            while (TryToken("&&"))
            {
                var l = left;
                var r = ParseUnary();
                left = labels => l(labels) && r(labels);
            }

            return left;
        }

        private Func<IReadOnlyDictionary<string, string>, bool> ParseUnary()
        {
            if (TryToken("!"))
            {
                var inner = ParseUnary();
                return labels => !inner(labels);
            }

            if (TryToken("("))
            {
                var inner = ParseOr();
                Expect(")");
                return inner;
            }

            if (TryWord("all"))
            {
                Expect("(");
                Expect(")");
                return _ => true;
            }

            if (TryWord("has"))
            {
                Expect("(");
                var key = ParseKey();
                Expect(")");
                return labels => labels.ContainsKey(key);
            }

            var k = ParseKey();
            if (TryToken("=="))
            {
                var v = ParseString();
                return labels => labels.TryGetValue(k, out var have) && have == v;
            }

            if (TryToken("!="))
            {
                var v = ParseString();
                return labels => !labels.TryGetValue(k, out var have) || have != v;
            }

            if (TryWord("not"))
            {
                if (!TryWord("in"))
                {
                    throw Error("expected 'in' after 'not'");
                }

                var set = ParseSet();
                return labels => !labels.TryGetValue(k, out var have) || !set.Contains(have);
            }

            if (TryWord("in"))
            {
                var set = ParseSet();
                return labels => labels.TryGetValue(k, out var have) && set.Contains(have);
            }

            throw Error($"expected ==, !=, in or not in after '{k}'");
        }

        private HashSet<string> ParseSet()
        {
            Expect("{");
            var set = new HashSet<string>(StringComparer.Ordinal);
            SkipSpace();
            if (TryToken("}"))
            {
                return set;
            }

            do
            {
                set.Add(ParseString());
            }
            while (TryToken(","));
            Expect("}");
            return set;
        }

        private string ParseKey()
        {
            SkipSpace();
            int start = pos;
            while (pos < s.Length && (char.IsAsciiLetterOrDigit(s[pos]) || s[pos] is '.' or '-' or '_' or '/'))
            {
                pos++;
            }

            if (pos == start)
            {
                throw Error("expected a label key");
            }

            return s[start..pos];
        }

        private string ParseString()
        {
            SkipSpace();
            if (pos >= s.Length || s[pos] is not ('\'' or '"'))
            {
                throw Error("expected a quoted value");
            }

            char q = s[pos++];
            int end = s.IndexOf(q, pos);
            if (end < 0)
            {
                throw Error("unterminated string");
            }

            var v = s[pos..end];
            pos = end + 1;
            return v;
        }

        private void Expect(string token)
        {
            if (!TryToken(token))
            {
                throw Error($"expected '{token}'");
            }
        }

        private bool TryToken(string token)
        {
            SkipSpace();
            if (string.CompareOrdinal(s, pos, token, 0, token.Length) == 0 && !(token == "!" && pos + 1 < s.Length && s[pos + 1] == '='))
            {
                pos += token.Length;
                return true;
            }

            return false;
        }

        private bool TryWord(string word)
        {
            SkipSpace();
            int end = pos + word.Length;
            if (string.CompareOrdinal(s, pos, word, 0, word.Length) == 0 && (end >= s.Length || !(char.IsAsciiLetterOrDigit(s[end]) || s[end] is '.' or '-' or '_' or '/')))
            {
                pos = end;
                return true;
            }

            return false;
        }
    }
}
