using System.Text.Encodings.Web;
using System.Text.Json;

namespace CalicoSharp.Cni;

/// <summary>How the plugin writes JSON to the runtime: indented, with only the escaping JSON requires.</summary>
internal static class JsonOut
{
    public static readonly JsonWriterOptions Options = new() { Indented = true, Encoder = MinimalEscaping.Instance };

    /// <summary>Escapes what JSON requires (quote, backslash, control characters) and the line and paragraph
    /// separators, and writes everything else as UTF-8, as UnsafeRelaxedJsonEscaping does; without its tables
    /// of allowed code points, which a fresh process builds for every call (measured: ~0.2 ms of the result's
    /// 0.35).</summary>
    private sealed class MinimalEscaping : JavaScriptEncoder
    {
        public static readonly MinimalEscaping Instance = new();

        private const string Hex = "0123456789ABCDEF";

        // A supplementary scalar never needs escaping here; the longest output is one \uXXXX.
        public override int MaxOutputCharactersPerInputCharacter => 6;

        public override bool WillEncode(int unicodeScalar) =>
            unicodeScalar < 0x20 || unicodeScalar is '"' or '\\' or 0x7F or 0x2028 or 0x2029 || (unicodeScalar >= 0x80 && unicodeScalar < 0xA0);

        public override unsafe int FindFirstCharacterToEncode(char* text, int textLength)
        {
            ArgumentNullException.ThrowIfNull(text);
            for (int i = 0; i < textLength; i++)
            {
                // Surrogates are never escaped: a pair is a supplementary scalar, written as UTF-8.
                if (!char.IsSurrogate(text[i]) && WillEncode(text[i]))
                {
                    return i;
                }
            }

            return -1;
        }

        public override unsafe bool TryEncodeUnicodeScalar(int unicodeScalar, char* buffer, int bufferLength, out int numberOfCharactersWritten)
        {
            ArgumentNullException.ThrowIfNull(buffer);
            if (!WillEncode(unicodeScalar))
            {
                return TryCopy(unicodeScalar, buffer, bufferLength, out numberOfCharactersWritten);
            }

            char shortForm = unicodeScalar switch
            {
                '"' => '"',
                '\\' => '\\',
                '\n' => 'n',
                '\r' => 'r',
                '\t' => 't',
                '\b' => 'b',
                '\f' => 'f',
                _ => '\0',
            };
            if (shortForm != '\0' && bufferLength >= 2)
            {
                buffer[0] = '\\';
                buffer[1] = shortForm;
                numberOfCharactersWritten = 2;
                return true;
            }

            if (bufferLength < 6)
            {
                numberOfCharactersWritten = 0;
                return false;
            }

            buffer[0] = '\\';
            buffer[1] = 'u';
            for (int i = 0; i < 4; i++)
            {
                buffer[2 + i] = Hex[(unicodeScalar >> (12 - (4 * i))) & 0xF];
            }

            numberOfCharactersWritten = 6;
            return true;
        }

        private static unsafe bool TryCopy(int scalar, char* buffer, int bufferLength, out int written)
        {
            var rune = new System.Text.Rune(scalar);
            written = 0;
            if (bufferLength < rune.Utf16SequenceLength)
            {
                return false;
            }

            written = rune.EncodeToUtf16(new Span<char>(buffer, bufferLength));
            return true;
        }
    }
}
